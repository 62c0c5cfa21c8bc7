"""What each depth responds to: figures of filters, maps, patches, maximization, reconstructions, traversals and embeddings.

``figures`` draws them for a run, ``units`` finds and maximizes single units, ``plots`` holds the mosaic
and file helpers, ``compare_plots`` draws a compare result from its JSON.
"""

from .figures import *  # noqa: F401,F403
from .figures import __all__ as _figures_all

__all__ = list(_figures_all)
