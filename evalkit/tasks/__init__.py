"""evalkit.tasks: task specs (YAML registry) and one module per protocol (listed in
`evalkit.tasks.base.PROTOCOL_MODULES`, loaded by `protocols()`)."""
