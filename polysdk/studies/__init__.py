"""Studies: the experiments of the seed documents, from Python, scripts or the CLI.

    from polysdk.studies import ToyModelStudy
    ToyModelStudy(batch="LR1", quick=True).run(out="runs/demo")   # -> report path

``available_studies()`` lists them by their ``polysdk run`` names.
"""

from polysdk.studies.base import Study, available_studies, get_study, register_study
from polysdk.studies.toy_models import ToyModelStudy

__all__ = ["Study", "ToyModelStudy", "available_studies", "get_study", "register_study"]
