"""The diagnostic classifier check: does a classifier score marked images as it scores originals?

Lives here: the classifier's labels (`labels`), how an image becomes its input (`inputs`), its
networks (`networks`), its training recipe (`training`), what a trained classifier is and how
it scores (`classifier`), and the check's statistics (`check`). May import wm's core, io and model
(the store). `networks` imports torch at import time, so its names are not
re-exported here: the other modules import it inside the functions that build or run a network.
"""

from .check import (DEFAULT_MARGIN, DEFAULT_RESAMPLES, MIN_CLEAN_AUROC, auroc, checked_readings, classifier_verdict,
                    compare_classifier, macro_auroc, mcnemar_exact, paired_bootstrap, paired_bootstrap_delta, roc_curve,
                    youden_threshold)
from .classifier import CARD_KIND, Classifier, WmClassifier, load_classifier, read_classifier_card
from .inputs import DEFAULT_INPUT_SIZE, MAX_NATIVE_INPUT, classifier_input, native_input_size, read_inputs
from .labels import POSITIVE_FOLDER_NAMES, LabelledImages, read_labels
from .training import (ClassifierTrainingConfig, ClassifierTrainingResult, EpochFigures, train_classifier,
                       validation_split)

__all__ = ["CARD_KIND", "DEFAULT_INPUT_SIZE", "DEFAULT_MARGIN", "DEFAULT_RESAMPLES", "MAX_NATIVE_INPUT",
           "MIN_CLEAN_AUROC", "POSITIVE_FOLDER_NAMES", "Classifier", "ClassifierTrainingConfig",
           "ClassifierTrainingResult", "EpochFigures", "LabelledImages", "WmClassifier", "auroc", "checked_readings",
           "classifier_input", "classifier_verdict", "compare_classifier", "load_classifier", "macro_auroc",
           "mcnemar_exact", "native_input_size", "paired_bootstrap", "paired_bootstrap_delta", "read_classifier_card",
           "read_inputs", "read_labels", "roc_curve", "train_classifier", "validation_split", "youden_threshold"]
