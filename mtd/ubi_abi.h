/*
 * The part of the Linux UBI user ABI that snapshot uses, declared for cffi (API mode).
 *
 * As for mtd_abi.h, "..." lets the C compiler fill in every value and struct layout from
 * the real <mtd/ubi-user.h> at build time: the ioctl numbers encode direction and size per
 * architecture, so none of them may be written down here.
 */

/* UBI_IOCEBCH: the LEB to change and how many bytes the write() that follows brings. */
struct ubi_leb_change_req {
    int32_t lnum;
    int32_t bytes;
    ...;
};

/* UBI_IOCSETVOLPROP */
struct ubi_set_vol_prop_req {
    uint8_t property;
    uint64_t value;
    ...;
};

#define UBI_VOL_PROP_DIRECT_WRITE ...

/* ioctl request numbers on a volume's character device (/dev/ubiX_Y) */
#define UBI_IOCEBER ...
#define UBI_IOCEBCH ...
#define UBI_IOCEBUNMAP ...
#define UBI_IOCEBISMAP ...
#define UBI_IOCSETVOLPROP ...

int ioctl(int fd, unsigned long request, ...);
