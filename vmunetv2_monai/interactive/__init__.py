"""The interactive (DeepEdit-type) VM-UNetV2: click guidance channels, the simulated annotator, and weights that
start from the automatic model."""

from .clicks import MAX_CLICKS, ClickError, check_clicks, next_click, read_clicks, read_clicks_file, render_clicks
from .simulation import ClickSimulation
from .transforms import AddClickGuidanced
from .weights import init_network

__all__ = [
    "MAX_CLICKS", "AddClickGuidanced", "ClickError", "ClickSimulation", "check_clicks", "init_network", "next_click",
    "read_clicks", "read_clicks_file", "render_clicks",
]
