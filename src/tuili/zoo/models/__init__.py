"""Model definitions. Importing this package registers every zoo model."""
from tuili.zoo.models import (  # noqa: F401  (import order = catalogue order)
    bert,
    digits,
    efficientnet,
    ghostnet,
    glyphs,
    gpt,
    mobilenet,
    mobilevit,
    resnet,
    shufflenet,
    squeezenet,
)
