"""Parses Prometheus text (stdin) with the Prometheus project's own parser and prints every
sample as JSON: [[name, {label: value}, value], ...]. A malformed exposition raises."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
json.dump(samples, sys.stdout)
