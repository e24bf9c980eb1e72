--[[
scratch_manager: jobs prefer the nodes that hold their datasets.

A job names its datasets in its comment, "datasets:NAME[,NAME...]"
(sbatch --comment datasets:imagenet,coco); this plugin adds
--prefer=ds_imagenet&ds_coco for it, a soft constraint (Slurm 22.05+): the
scheduler places the job on nodes whose scratch_manager holds those datasets
(cached, or being copied) when it can, and elsewhere when it cannot. A job's
own --prefer is left as it is. Each node advertises what it holds with
slurm_node in /etc/scratch_manager.conf.

Only the features active on some node go into --prefer: slurmctld refuses a
job that prefers a feature no node has. Their list is FEATURES_FILE, which
the scratch_manager daemon on this host writes every 30 s (slurm_stage =
features, or yes); without it, no job is given a preference.

Install: copy this file next to slurm.conf (or merge its function into the
site's job_submit.lua), set JobSubmitPlugins=lua in slurm.conf, and run a
scratch_manager daemon with slurm_stage on slurmctld's host.
]]

local FEATURES_FILE = "/run/scratch_manager/slurm-features"

-- The ds_ features active on some node, as a set; empty when the file is missing.
local function active_features()
	local set = {}
	local f = io.open(FEATURES_FILE, "r")
	if f == nil then
		return set
	end
	local line = f:read(1048576) or ""
	f:close()
	for feature in string.gmatch(line, "ds_[%w_]+") do
		set[feature] = true
	end
	return set
end

local function features_of(list)
	local features = {}
	local active = active_features()
	for name in string.gmatch(list, "[^,%s]+") do
		-- As scontrol is given them by the daemon: ds_ and the name, any other character as _.
		local feature = "ds_" .. string.gsub(name, "[^%w_]", "_")
		if active[feature] then
			table.insert(features, feature)
		end
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
