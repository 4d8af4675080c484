import _fake_common


class ServerArgs:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    @staticmethod
    def add_cli_args(parser):
        parser.add_argument("--model-path", "--model")
        parser.add_argument("--served-model-name")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=30000)
        parser.add_argument("--context-length", type=int)
        parser.add_argument("--device")
        parser.add_argument("--max-total-tokens", type=int)
        parser.add_argument("--enable-metrics", action="store_true")

    @classmethod
    def from_cli_args(cls, ns):
        return cls(**vars(ns))

    def resolve_once(self):
        derived = _fake_common.max_positions(self.model_path)
        if self.context_length and self.context_length > derived:
            raise ValueError(
                f"Requested context_length={self.context_length} exceeds the model's "
                f"max_position_embeddings={derived}"
            )
