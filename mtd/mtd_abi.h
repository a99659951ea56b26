/*
 * The part of the Linux MTD user ABI that snapshot uses, declared for cffi (API mode): the
 * ioctls that change a device. Reads, the geometry and the ECC counters need no ioctl
 * (mtd/device.py reads them with pread and from sysfs).
 *
 * This is not a copy of <mtd/mtd-user.h>: "..." tells cffi to let the C compiler fill in
 * every value and struct layout from the real header at build time. The ioctl numbers
 * encode direction and size differently per architecture (MIPS and PowerPC differ from
 * x86 and ARM), so none of them may be written down here.
 */

struct erase_info_user {
    uint32_t start;
    uint32_t length;
};

struct erase_info_user64 {
    uint64_t start;
    uint64_t length;
};

/* mtd_info_user.flags, as sysfs's flags attribute shows them */
#define MTD_POWERUP_LOCK ...

/* ioctl request numbers */
#define MEMERASE64 ...
#define MEMUNLOCK ...
#define MEMGETBADBLOCK ...
#define MEMSETBADBLOCK ...

int ioctl(int fd, unsigned long request, ...);
