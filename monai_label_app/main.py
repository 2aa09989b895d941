"""A MONAI Label app serving exported CM-CGNS task bundles (scripts/export_bundle.py) from <app>/model/<name>/.

Differs from the stock `monaibundle` sample app in one place: BundleInferTask(add_post_restore=False). The bundles'
postprocessing already returns results at the original image size (segmentation: Invertd, then the label x first
as MONAI Label's writer expects; detection: boxes in original pixels), and MONAI Label's Restored would resize the
x-first 2D label by the rows-first image shape; it cannot restore classification's [C] scores either.
Runs inside the MONAI Label side environment (make label-env; docs/monai_label.md); the bundle never imports it.
"""

import logging

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models, strtobool

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="CM-CGNS chest X-ray bundles",
            description="Classification, segmentation and detection bundles exported from the CM-CGNS bundle",
            version=monailabel.__version__,
        )

    def init_infers(self):
        infers = {}
        for name, path in self.models.items():
            infers[name] = BundleInferTask(path, self.conf, add_post_restore=False)
            logger.info(f"+++ Adding Inferer:: {name} => {infers[name]}")
        return infers

    def init_trainers(self):
        trainers = {}
        if strtobool(self.conf.get("skip_trainers", "false")):
            return trainers
        for name, path in self.models.items():
            task = BundleTrainTask(path, self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}
