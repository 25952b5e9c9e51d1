"""What a run reads besides its config — prompts, constitution, templates — loaded and validated once, with
the content hashes its fingerprints record. The driver loads them; a Ray actor loads its own copy and checks
the hashes match."""

from __future__ import annotations

from dataclasses import dataclass, field

from cai_pipeline.bundled import resolve_resource
from cai_pipeline.config import RunConfig
from cai_pipeline.errors import UserError
from cai_pipeline.fingerprint import content_sha256
from cai_pipeline.inputs import LoadedPrompts, load_prompts


@dataclass
class Assets:
    cfg: RunConfig
    prompts: LoadedPrompts
    constitution: object = None
    templates: object = None
    hashes: dict = field(default_factory=dict)  # prompts, constitution, templates: what stages' `content` name
    reuse: object = None  # reuse.ReuseSource where the config names an earlier run (`reuse:` / --reuse)

    def prompt_shard(self, index: int) -> list[dict]:
        size = self.cfg.shard_size
        return self.prompts.rows[index * size : (index + 1) * size]

    @property
    def prompt_shards(self) -> int:
        return -(-len(self.prompts.rows) // self.cfg.shard_size)


def load_assets(cfg: RunConfig) -> Assets:
    from cai_pipeline.constitution import constitution_sha256, load_constitution
    from cai_pipeline.reuse import open_source
    from cai_pipeline.templates import TemplateSet

    p = cfg.prompts
    prompts = load_prompts(p.path, fmt=p.format, limit=p.limit, system_prompt=p.system_prompt, part=p.part,
                           parts=p.parts, near=p.near_duplicates, near_n=p.near_duplicate_n)
    constitution = load_constitution(resolve_resource(cfg.constitution))
    if cfg.judge.principles > len(constitution.principles):
        raise UserError(f"judge.principles={cfg.judge.principles}, but {cfg.constitution} has "
                        f"{len(constitution.principles)} principles; set judge.principles to at most that")
    templates = TemplateSet.for_constitution(constitution)
    hashes = {"prompts": content_sha256(prompts.rows), "constitution": constitution_sha256(constitution),
              "templates": templates.template_hashes()}
    reuse = open_source(cfg.reuse, cfg.out_dir) if cfg.reuse else None
    return Assets(cfg, prompts, constitution, templates, hashes, reuse)
