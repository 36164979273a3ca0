"""The runner: the process that hosts one replica of a partner's model inside its sandbox."""
