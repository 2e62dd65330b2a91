"""Names of everything a deployed stage owns, derived from the stage name alone.

``.chalice/config.json`` spells the same names out by hand (it must hold no generated
values); ``tests/deploy`` checks that both agree.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Final

APP_NAME: Final = "distributed-counter"
DEPLOYED_STAGES: Final = ("dev", "prod")

#: The app's Lambda handlers, as Chalice names them (``api_handler`` serves the routes).
API_HANDLER: Final = "api_handler"
STREAM_HANDLER: Final = "handle_stream_records"
DEAD_LETTER_HANDLER: Final = "handle_dead_letters"
HEALER: Final = "heal_counters"
HANDLERS: Final = (API_HANDLER, STREAM_HANDLER, DEAD_LETTER_HANDLER, HEALER)


class UnknownStageError(ValueError):
    """Not one of :data:`DEPLOYED_STAGES` (``local`` runs on the embedded backend)."""


@dataclass(frozen=True, slots=True)
class Stage:
    """One deployed stage: ``Stage.named("dev")``."""

    name: str

    @classmethod
    def named(cls, name: str) -> Stage:
        """The stage called ``name``.

        Raises
        ------
        UnknownStageError
            ``name`` is not a deployed stage.
        """
        if name not in DEPLOYED_STAGES:
            raise UnknownStageError(
                f"unknown stage {name!r}: expected one of {', '.join(DEPLOYED_STAGES)}"
            )
        return cls(name)

    @property
    def table_name(self) -> str:
        # One table per stage, so dev and prod can share an account.
        return f"{APP_NAME}-{self.name}"

    @property
    def tier1_queue_name(self) -> str:
        return f"{self.table_name}-dlq-tier1"

    @property
    def tier2_queue_name(self) -> str:
        return f"{self.table_name}-dlq-tier2"

    @property
    def data_stack_name(self) -> str:
        return f"{APP_NAME}-{self.name}-data"

    @property
    def retains_data(self) -> bool:
        """Teardown keeps this stage's data stack (table, queues, alarms)."""
        return self.name == "prod"

    def export_name(self, output_key: str) -> str:
        """Name under which the data stack exports ``output_key`` (see the template)."""
        return f"{self.data_stack_name}-{output_key}"

    def function_name(self, handler: str) -> str:
        """The Lambda function Chalice deploys for ``handler`` on this stage."""
        if handler == API_HANDLER:
            return f"{APP_NAME}-{self.name}"
        return f"{APP_NAME}-{self.name}-{handler}"

    def template_parameters(self) -> dict[str, str]:
        """Parameters of ``infrastructure/template.yaml`` for this stage."""
        return {"Stage": self.name, "AppName": APP_NAME, "TableName": self.table_name}


def configure_logging() -> None:
    """Progress of the deploy modules on stderr; other libraries' chatter stays off."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    # "__main__": the module run with ``python -m`` logs under that name.
    for name in ("infrastructure", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)
