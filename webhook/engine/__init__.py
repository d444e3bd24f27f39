"""The pure engine: review request + policy in, decision and JSON patch out.

No files, network, clock, environment or metrics here (the default policy and the templates are
read once, at start-up). Modules import only from their left in this order: names, memo, errors,
values, policy, options, selection, builder, render, patch, inject (workloads, for manifests, at
the side). tests/test_project.py enforces it; docs/design.md explains the steps.
"""
