"""A wing, health: checks and the watch that decides a trial (checks, watch). Imports base,
store, tree, the engine, and fleet (the watch reads the fleet's settings)."""
