/**
 * Files the observer works on at once. Reading every loop device's sysfs
 * files, or every image's header, all at once opens as many files as there
 * are datasets (three per loop device): with a thousand that can exhaust the
 * file descriptors, and on NFS it sends a thousand requests in one burst.
 */
export const READ_CONCURRENCY = 32;
