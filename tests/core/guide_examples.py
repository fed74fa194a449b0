"""The Wan quickstart guide's example files, as the guide gives them (SimpleTuner's quickstart/WAN.md).

The tests write them into the guide's folder layout (``config/config.json``,
``config/wan/multidatabackend.json``, ``config/user_prompt_library.json``, ``datasets/...``) and run
tuner from the folder above, as the guide does. Kept verbatim: a change here must be a change of the guide.
"""

from __future__ import annotations

from tuner_tread.examples import GUIDE_ONE_ROUTE

__all__ = ["GUIDE_CONFIG", "GUIDE_BACKEND", "GUIDE_PROMPT_LIBRARY", "GUIDE_CONFIG_ADDITIONS"]

# "Seu config no final vai ficar parecido com o meu" -- config/config.json.
GUIDE_CONFIG = {
    "resume_from_checkpoint": "latest",
    "quantize_via": "cpu",
    "attention_mechanism": "sageattention",
    "data_backend_config": "config/wan/multidatabackend.json",
    "aspect_bucket_rounding": 2,
    "seed": 42,
    "minimum_image_size": 0,
    "offload_during_startup": True,
    "disable_benchmark": False,
    "output_dir": "output/wan",
    "lora_type": "standard",
    "lycoris_config": "config/wan/lycoris_config.json",
    "max_train_steps": 400000,
    "num_train_epochs": 0,
    "checkpoint_step_interval": 1000,
    "checkpoints_total_limit": 5,
    "hub_model_id": "wan-disney",
    "push_to_hub": "True",
    "push_checkpoints_to_hub": "True",
    "tracker_project_name": "lora-training",
    "tracker_run_name": "wan-adamW",
    "report_to": "wandb",
    "model_type": "lora",
    "pretrained_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "pretrained_t5_model_name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "model_family": "wan",
    "train_batch_size": 2,
    "gradient_checkpointing": True,
    "gradient_accumulation_steps": 1,
    "caption_dropout_probability": 0.1,
    "resolution_type": "pixel_area",
    "resolution": 480,
    "validation_seed": 42,
    "validation_step_interval": 100,
    "validation_resolution": "832x480",
    "validation_prompt": "两只拟人化的猫咪身穿舒适的拳击装备，戴着鲜艳的手套，在聚光灯照射的舞台上激烈对战",
    "validation_negative_prompt": "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
    "validation_guidance": 5.2,
    "validation_num_inference_steps": 40,
    "validation_num_video_frames": 81,
    "mixed_precision": "bf16",
    "optimizer": "optimi-lion",
    "learning_rate": 5e-05,
    "max_grad_norm": 0.01,
    "grad_clip_method": "value",
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 400000,
    "base_model_precision": "no_change",
    "vae_batch_size": 1,
    "webhook_config": "config/wan/webhook.json",
    "compress_disk_cache": True,
    "use_ema": True,
    "ema_validation": "ema_only",
    "ema_update_interval": 2,
    "delete_problematic_images": "True",
    "disable_bucket_pruning": True,
    "validation_guidance_skip_layers": [
        9
    ],
    "validation_guidance_skip_layers_start": 0.0,
    "validation_guidance_skip_layers_stop": 1.0,
    "lora_rank": 16,
    "flow_schedule_shift": 3,
    "validation_prompt_library": False,
    "ignore_final_epochs": True
}

# Lines the guide tells the reader to add to config.json: the prompt library (written with its flag's
# dashes, "adicione-a ao TRAINER_EXTRA_ARGS adicionando uma nova linha no final de config.json") and
# TREAD's conservative route ("Adicione isto ao seu config.json").
GUIDE_CONFIG_ADDITIONS = {
    "--user_prompt_library": "config/user_prompt_library.json",
    "tread_config": GUIDE_ONE_ROUTE,
}

# "Crie um documento --data_backend_config ... contendo isto" -- at the path config.json names.
GUIDE_BACKEND = [
    {
        "id": "disney-black-and-white",
        "type": "local",
        "dataset_type": "video",
        "crop": False,
        "resolution": 480,
        "minimum_image_size": 480,
        "maximum_image_size": 480,
        "target_downsample_size": 480,
        "resolution_type": "pixel_area",
        "cache_dir_vae": "cache/vae/wan/disney-black-and-white",
        "instance_data_dir": "datasets/disney-black-and-white",
        "disabled": False,
        "caption_strategy": "textfile",
        "metadata_backend": "discovery",
        "repeats": 0,
        "video": {"num_frames": 75, "min_frames": 75, "bucket_strategy": "aspect_ratio"},
    },
    {
        "id": "text-embeds",
        "type": "local",
        "dataset_type": "text_embeds",
        "default": True,
        "cache_dir": "cache/text/wan",
        "disabled": False,
        "write_batch_size": 128,
    },
]

# The guide's diverse prompt library (config/user_prompt_library.json).
GUIDE_PROMPT_LIBRARY = {
    "anime_<token>": "a breathtaking anime-style video featuring <token>, capturing her essence with vibrant colors, dynamic motion, and expressive storytelling",
    "chef_<token>": "a high-quality, detailed video of <token> as a sous-chef, immersed in the art of culinary creation with captivating close-ups and engaging sequences",
    "just_<token>": "a lifelike and intimate video portrait of <token>, showcasing her unique personality and charm through nuanced movement and expression",
    "cinematic_<token>": "a cinematic, visually stunning video of <token>, emphasizing her dramatic and captivating presence through fluid camera movements and atmospheric effects",
    "elegant_<token>": "an elegant and timeless video portrait of <token>, exuding grace and sophistication with smooth transitions and refined visuals",
    "adventurous_<token>": "a dynamic and adventurous video featuring <token>, captured in an exciting, action-filled sequence that highlights her energy and spirit",
    "mysterious_<token>": "a mysterious and enigmatic video portrait of <token>, shrouded in shadows and intrigue with a narrative that unfolds in subtle, cinematic layers",
    "vintage_<token>": "a vintage-style video of <token>, evoking the charm and nostalgia of a bygone era through sepia tones and period-inspired visual storytelling",
    "artistic_<token>": "an artistic and abstract video representation of <token>, blending creativity with visual storytelling through experimental techniques and fluid visuals",
    "futuristic_<token>": "a futuristic and cutting-edge video portrayal of <token>, set against a backdrop of advanced technology with sleek, high-tech visuals",
    "woman": "a beautifully crafted video portrait of a woman, highlighting her natural beauty and unique features through elegant motion and storytelling",
    "man": "a powerful and striking video portrait of a man, capturing his strength and character with dynamic sequences and compelling visuals",
    "boy": "a playful and spirited video portrait of a boy, capturing youthful energy and innocence through lively scenes and engaging motion",
    "girl": "a charming and vibrant video portrait of a girl, emphasizing her bright personality and joy with colorful visuals and fluid movement",
    "family": "a heartwarming and cohesive family video, showcasing the bonds and connections between loved ones through intimate moments and shared experiences"
}
