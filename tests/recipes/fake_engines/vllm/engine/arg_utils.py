import _fake_common


class AsyncEngineArgs:
    def __init__(self, ns):
        self.ns = ns

    @classmethod
    def from_cli_args(cls, ns):
        return cls(ns)

    def create_engine_config(self):
        derived = _fake_common.max_positions(self.ns.model)
        if self.ns.max_model_len and self.ns.max_model_len > derived:
            raise ValueError(
                f"1 validation error for ModelConfig\n  Value error, User-specified "
                f"max_model_len ({self.ns.max_model_len}) is greater than the derived "
                f"max_model_len ({derived}). [type=value_error, input_value=ArgsKwargs((), "
                "{'model': 'x'}), input_type=ArgsKwargs]\n"
                "    For further information visit https://errors.pydantic.dev"
            )
