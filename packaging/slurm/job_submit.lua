--[[
scratch_manager: jobs prefer the nodes that hold their datasets.

A job names its datasets in its comment, "datasets:NAME[,NAME...]"
(sbatch --comment datasets:imagenet,coco); this plugin adds
--prefer=ds_imagenet&ds_coco for it, a soft constraint (Slurm 22.05+): the
scheduler places the job on nodes whose scratch_manager holds those datasets
(cached, or being copied) when it can, and elsewhere when it cannot. A job's
own --prefer is left as it is. Each node advertises what it holds with
slurm_node in /etc/scratch_manager.conf.

Install: copy this file next to slurm.conf (or merge its function into the
site's job_submit.lua) and set JobSubmitPlugins=lua in slurm.conf.
]]

local function features_of(list)
	local features = {}
	for name in string.gmatch(list, "[^,%s]+") do
		-- As scontrol is given them by the daemon: ds_ and the name, any other character as _.
		local feature = "ds_" .. string.gsub(name, "[^%w_]", "_")
		table.insert(features, feature)
		if #features >= 16 then
			break
		end
	end
	return features
end

function slurm_job_submit(job_desc, part_list, submit_uid)
	local comment = job_desc.comment
	if comment == nil then
		return slurm.SUCCESS
	end
	local list = string.match(comment, "datasets:([^%s;]+)")
	if list == nil then
		return slurm.SUCCESS
	end
	if job_desc.prefer ~= nil and job_desc.prefer ~= "" then
		return slurm.SUCCESS
	end
	local features = features_of(list)
	if #features > 0 then
		job_desc.prefer = table.concat(features, "&")
		slurm.log_debug("scratch_manager: job of uid %u prefers %s", submit_uid, job_desc.prefer)
	end
	return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
	return slurm.SUCCESS
end

return slurm.SUCCESS
