"""The diagnostic classifier check: does a classifier score marked images as it scores originals?

Lives here: the classifier's labels (`labels`), how an image becomes its input (`inputs`), its
networks (`networks`), its training recipe (`training`), what a trained classifier is and how
it scores (`classifier`), a user's own model file and its card (`external`, `card`), the
positive control (`control`), and the check's statistics (`check`). May import wm's core, io and model
(the store). `networks` imports torch at import time, so its names are not
re-exported here: the other modules import it inside the functions that build or run a network.
"""

from .card import ClassifierCard, read_classifier_model_card
from .check import (DEFAULT_MARGIN, DEFAULT_RESAMPLES, MIN_CLEAN_AUROC, auroc, checked_readings, classifier_verdict,
                    compare_classifier, detectable_drop, macro_auroc, mcnemar_exact, paired_bootstrap,
                    paired_bootstrap_delta, roc_curve, with_positive_control, youden_threshold)
from .classifier import CARD_KIND, Classifier, WmClassifier, load_classifier, read_classifier_card
from .control import DEFAULT_MARK_DROP_DB, PositiveControl, default_control, parse_control
from .external import MODEL_FORMATS, ExternalClassifier, load_external_classifier, open_classifier
from .inputs import (DEFAULT_INPUT_SIZE, MAX_NATIVE_INPUT, NOMINAL, Intensity, classifier_input, native_input_size,
                     read_inputs)
from .labels import POSITIVE_FOLDER_NAMES, LabelledImages, matching_outputs, read_labels
from .training import (ClassifierTrainingConfig, ClassifierTrainingResult, EpochFigures, train_classifier,
                       validation_split)

__all__ = ["CARD_KIND", "DEFAULT_INPUT_SIZE", "DEFAULT_MARK_DROP_DB", "DEFAULT_MARGIN", "DEFAULT_RESAMPLES",
           "MAX_NATIVE_INPUT", "MIN_CLEAN_AUROC", "MODEL_FORMATS", "NOMINAL", "POSITIVE_FOLDER_NAMES", "Classifier",
           "ClassifierCard", "ClassifierTrainingConfig", "ClassifierTrainingResult", "EpochFigures",
           "ExternalClassifier", "Intensity", "LabelledImages", "PositiveControl", "WmClassifier", "auroc",
           "checked_readings", "classifier_input", "classifier_verdict", "compare_classifier", "default_control", "detectable_drop",
           "load_classifier", "load_external_classifier", "macro_auroc", "matching_outputs", "mcnemar_exact",
           "native_input_size", "open_classifier", "paired_bootstrap", "paired_bootstrap_delta", "parse_control",
           "read_classifier_card", "read_classifier_model_card", "read_inputs", "read_labels", "roc_curve",
           "train_classifier", "validation_split", "with_positive_control", "youden_threshold"]
