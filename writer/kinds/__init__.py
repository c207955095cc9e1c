"""The built-in kinds' handlers: ``video`` and ``roster``, one module and one ``.sql`` file each.

Their declarations are in :mod:`jobplatform.builtins` (what producers load); each names its
module here as :attr:`jobplatform.kinds.Kind.handler`. They use nothing of the engine that a
plug-in cannot use.
"""
