# Type checkers do not run import hooks: this stub gives them the old path
# `shardstore.tfops`, which the plugin guide of earlier releases named. At run
# time the name is an alias of the module itself (shardstore/_aliases.py).
from shardstore.sources.tfops import *  # noqa: F403
from shardstore.sources.tfops import __all__ as __all__
