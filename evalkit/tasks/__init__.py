"""evalkit.tasks: task specs (YAML registry) and one module per protocol."""

import evalkit.tasks.segmentation  # noqa: F401  (registers the protocol)
import evalkit.tasks.zeroshot_retrieval  # noqa: F401  (registers the protocol)
from evalkit.tasks import zeroshot_classification  # noqa: F401  (registers the protocol)
