"""The tree: overlay directories to and from tar streams (archive, capture, restore).
Imports only errors, text, store.format (compression numbers) and tree modules."""
