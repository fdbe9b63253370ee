"""Looking at latents: pure HTML renderers (`widgets`: token highlights, sample cards), plotly figures that still
show in a static export (`figures`, and a sweep's frontier in `frontier`), and the ipywidgets explorer
(`latent_explorer`).

May import everything up to `kit.interpret`. Names load on first use, so `import kit.view` stays light.
"""
from importlib import import_module

# the explorer's module is not named `explorer`: importing it would set kit.view.explorer to the module
_EXPORTS = {"token_highlight": "widgets", "sample_card": "widgets", "explorer": "latent_explorer",
            "Explorer": "latent_explorer",
            "activation_histogram": "figures", "domain_heatmap": "figures", "domain_profile_bar": "figures",
            "setup_plotly": "figures", "show": "figures", "frontier_figures": "frontier"}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"kit.view.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'kit.view' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
