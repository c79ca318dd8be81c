"""The batch command-line tools over the detector factory: ``tf-detect`` (:mod:`.detect`) and
its distributed run on a Ray cluster (:mod:`.detect_ray`, ``tf-detect --ray``)."""
