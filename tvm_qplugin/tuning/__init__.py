"""MetaSchedule as the product tuner (see docs/architecture.md "Tuning")."""
