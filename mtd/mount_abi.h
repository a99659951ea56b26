/*
 * The mount calls `snapshot mount` makes at boot, declared for cffi (API mode): mount(2),
 * umount2(2) and pivot_root(2), which the C library does not wrap (the build's source
 * defines it over syscall(2)).
 *
 * As for mtd_abi.h, "..." lets the C compiler fill in the flag values from the real
 * <sys/mount.h> at build time.
 */

/* mount(2) flags */
#define MS_RDONLY ...
#define MS_BIND ...
#define MS_MOVE ...

/* umount2(2) flags */
#define MNT_DETACH ...

int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);
int pivot_root(const char *new_root, const char *put_old);
