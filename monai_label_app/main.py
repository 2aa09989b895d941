"""A MONAI Label app serving exported CM-CGNS task bundles (scripts/export_bundle.py) from <app>/model/<name>/.

The stock `monaibundle` sample app would do for segmentation and detection; classification needs
BundleInferTask(add_post_restore=False): MONAI Label's Restored cannot restore a [C] class-score output to the
image's shape. Runs inside the MONAI Label side environment (make label-env; docs/monai_label.md), never imported
by the bundle or its tests.
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
            infers[name] = BundleInferTask(path, self.conf, add_post_restore="classification" not in name)
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
