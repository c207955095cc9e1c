"""The built-in kinds: ``video`` and ``roster``, one module and one ``.sql`` file each.

They are registered like any plug-in, through the ``jobplatform.kinds`` entry points of this
package, and use nothing of the engine that a plug-in cannot use.
"""
