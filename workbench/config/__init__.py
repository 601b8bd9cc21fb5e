"""What a run is asked to do, and whether the asker may: `schema` (DistillConfig and its sections),
`fields` (the typed-field machinery: help text, validation naming the field, YAML and --set parsing),
`paths` (how a path is told from a hub id, the file suffixes the loaders read), `gate` (the one check
of every path and reference that enters the app) and `escaping` (foreign text shown as text).
Imports nothing of the workbench: every other package may import it."""
