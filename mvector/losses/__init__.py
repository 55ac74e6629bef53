"""Training losses, built by name: ``build_loss('AAMLoss', margin=0.2, scale=32)``."""
from mvector.losses.aam import AAMLoss, SubCenterLoss
from mvector.losses.additive_margin import AMLoss, ARMLoss
from mvector.losses.cross_entropy import CELoss
from mvector.losses.margin_scheduler import MarginScheduler
from mvector.losses.metric import GE2ELoss, TripletLoss
from mvector.losses.sphereface2 import SphereFace2
from mvector.losses.triplet import TripletAngularMarginLoss
from mvector.registry import Registry

LOSSES = Registry("loss")
for _loss in (AAMLoss, AMLoss, ARMLoss, CELoss, GE2ELoss, SphereFace2, SubCenterLoss, TripletAngularMarginLoss,
              TripletLoss):
    LOSSES.register(_loss)
del _loss


def build_loss(name, **kwargs):
    """Build a registered loss; an unknown name or keyword raises ConfigError listing the valid ones."""
    return LOSSES.build(name, **kwargs)


__all__ = ["LOSSES", "build_loss", "MarginScheduler", "AAMLoss", "AMLoss", "ARMLoss", "CELoss",
           "GE2ELoss", "SphereFace2", "SubCenterLoss", "TripletAngularMarginLoss", "TripletLoss"]
