"""A wing, fleet: bundles of snapshots and the channels that roll them out (bundle, fetch,
channel). Imports base, store, tree and the engine; no other wing."""
