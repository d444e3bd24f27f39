"""Build-time tools: generated reference docs and the chart's values.schema.json (`make docs`).
Never imported at run time."""
