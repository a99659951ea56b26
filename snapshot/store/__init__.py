"""The store: the chain on flash as bytes and records (format, chain, trial, marks, verified,
legacy: the 2014 format read). Imports only errors, text, mtd and store modules."""
