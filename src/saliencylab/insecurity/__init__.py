"""Deliberative explanations (Wang & Vasconcelos, "Deliberative Explanations: visualizing network insecurities",
NeurIPS 2019): difficulty scores and their attributions (:mod:`.attribution`), insecurity maps (:mod:`.maps`),
the ground-truth ambiguities of CUB and ADE20K (:mod:`.ground_truth`) and their evaluation (:mod:`.evaluate`)."""
