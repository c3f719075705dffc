"""LLaVA conventions shared by the data pipeline and the model."""

IMAGE_TOKEN_INDEX = -200  # placeholder id in ``input_ids`` where image features are spliced
IGNORE_INDEX = -100  # label id that the language loss ignores
DEFAULT_IMAGE_TOKEN = '<image>'  # placeholder string in the conversation text
