"""The pure core of the position pipeline: values, ids, the transition table and `decide`.

Nothing here does I/O, reads a clock, draws random numbers or imports Faust/aiokafka; the
stream agent loads a key's `KeyState`, calls `decide`, writes the new state and sends the
commands. See docs/state-machine.md.
"""

from streams.domain import commands, exceptions, ids, model, transitions
from streams.domain.commands import *  # noqa: F403 - the package's face: each module's own __all__
from streams.domain.decide import decide
from streams.domain.exceptions import *  # noqa: F403
from streams.domain.ids import *  # noqa: F403
from streams.domain.model import *  # noqa: F403
from streams.domain.transitions import *  # noqa: F403
from streams.domain.verdicts import stop_loss_price

__all__ = [*commands.__all__, *exceptions.__all__, *ids.__all__, *model.__all__, *transitions.__all__, "decide",
           "stop_loss_price"]
