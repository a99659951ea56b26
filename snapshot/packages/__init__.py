"""A wing, packages: package changes as snapshots (feeds: opkg/apk; transaction; upgrade).
Imports base, store, tree and the engine; no other wing."""
