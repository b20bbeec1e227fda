"""Pictures of pipelines: DOT, Mermaid and text (no dependency), drawn with Graphviz.

:func:`figure` decides what a picture shows (:mod:`plait.viz.figure`); the renderers
only decide how it looks. :class:`plait.Pipeline` offers them as ``to_dot()``,
``to_mermaid()``, ``visualize()`` and its Jupyter display.
"""

from plait.viz.dot import to_dot
from plait.viz.figure import Box, Cluster, Drawable, Edge, Figure, figure
from plait.viz.mermaid import to_mermaid
from plait.viz.render import available, mimebundle
from plait.viz.text import to_text

__all__ = [
    "Box",
    "Cluster",
    "Drawable",
    "Edge",
    "Figure",
    "available",
    "figure",
    "mimebundle",
    "to_dot",
    "to_mermaid",
    "to_text",
]
