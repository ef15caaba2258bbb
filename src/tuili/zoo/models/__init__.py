"""Model definitions. Importing this package registers every zoo model."""
from tuili.zoo.models import (  # noqa: F401  (import order = catalogue order)
    mobilenet,
    shufflenet,
    squeezenet,
    ghostnet,
    efficientnet,
    mobilevit,
    resnet,
    bert,
    gpt,
    digits,
    glyphs,
)
