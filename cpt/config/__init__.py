"""config: the typed schema of every command's config (`schema`: one dataclass per Hydra group, registered in the
ConfigStore with cpt's ${cpt_*:} resolvers) and the cross-field rules types cannot express (`validate`). Code below
the commands receives these dataclasses, never raw dicts. May import cpt.common and cpt.assets (the resolvers that
name offline corpora and models)."""
