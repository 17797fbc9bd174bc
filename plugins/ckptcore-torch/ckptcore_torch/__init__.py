"""ckptcore-torch: PyTorch objects in ckptcore's object-graph checkpoints.

Installed, it is found through the ``ckptcore`` entry-point group; there is
nothing to import. Importing this package does not import torch.

Example:
    >>> import torch, ckptcore as ck
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> opt = torch.optim.Adam(net.parameters())
    >>> path = ck.Checkpoint(model=net, optimizer=opt).save("memory://doc/torch/init/ckpt")
    >>> _ = ck.Checkpoint(model=net, optimizer=opt).restore(path).assert_existing_objects_matched()
"""

from importlib import metadata as _metadata

try:  # pyproject.toml's version is the one source
    __version__ = _metadata.version("ckptcore-torch")
except _metadata.PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
