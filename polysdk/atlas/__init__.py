"""The detector agreement atlas and neuron pages.

    from polysdk.atlas import Atlas, write_neuron_page
    atlas = Atlas(store, sites="fc1", truth=planted.polysemantic).fit()
    atlas.result_["polysemantic"]            # (unit, detector) verdicts; "score" likewise
    atlas.agreement("class_selectivity", "dictionary_features")   # Jaccard, Spearman
    atlas.save(store)                        # result "atlas/fc1"
    atlas.to_html("out/atlas.html")          # page + neurons/fc1/unit-<u>.html

    polysdk atlas acts.zarr --site fc1 --out out     # the same from the command line

A study's report adds it with one call: ``add_atlas(page, store, out, sites="fc1")``.
"""

from polysdk.atlas._atlas import Atlas, jaccard, save_truth, spearman
from polysdk.atlas._page import add_atlas, agreement_figure, matrix_figure
from polysdk.atlas.neuron_page import neuron_page, neuron_page_path, write_neuron_page

__all__ = ["Atlas", "add_atlas", "agreement_figure", "jaccard", "matrix_figure", "neuron_page",
           "neuron_page_path", "save_truth", "spearman", "write_neuron_page"]
