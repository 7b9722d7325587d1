"""The A/B protocol (flow vs MLP dynamics): jobs, report and verdict."""
