"""Reading a Prometheus exposition in tests: a sample's value after an event, not a family's name (a name is
there as soon as the family is registered, whether or not anything was counted)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` (``..._count``, ``..._total`` as exposed) whose labels include
    ``labels``; 0.0 when there is none."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
