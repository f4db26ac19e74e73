"""plan.md files: parse, validate, substitute variables, expand foreach."""
