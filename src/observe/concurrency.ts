/**
 * Files the observer works on at once: the entries of datadir and cachedir
 * (lstat), and the headers of new images. All at once would open as many
 * files as there are datasets, which can exhaust the file descriptors, and
 * on NFS sends a thousand requests in one burst.
 */
export const READ_CONCURRENCY = 32;
