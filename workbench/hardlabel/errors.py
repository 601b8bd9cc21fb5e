"""What the teacher-written data stage raises: one error naming the config field to look at."""


class GenerationError(RuntimeError):
    """Generation could not finish; `field` is the config field to look at. Rows written are kept."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")
