from django.apps import AppConfig


class PgdurableConfig(AppConfig):
    """Makes the `pgdurable_worker` management command available."""

    name = "pgdurable.integrations.django"
    label = "pgdurable"
    verbose_name = "pgdurable"
