"""classic: `posttrain classic ALGO --env ENV`, the configuration shared by every classic algorithm, with one section
per family. Defaults are tuned for each family's default environment (FrozenLake, CartPole-v1, Pendulum-v1); a
value of 0 for `total_steps`, `lr` or `num_envs` means "the algorithm's default" (see `posttrain.classic`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.config.sections import CheckpointConfig, Config, LogConfig, RunConfig


@dataclass
class TabularSection(Config):
    alpha: float = 0.1
    """Step size of the TD / Monte-Carlo updates (SARSA, Q-learning, td, mc)."""
    eps_start: float = 1.0
    """ε-greedy: exploration probability at the first episode."""
    eps_end: float = 0.01
    """ε-greedy: the floor ε decays to."""
    eps_decay: float = 0.995
    """ε-greedy: ε ← max(eps_end, ε · eps_decay) after each episode."""
    n: int = 1
    """td: n-step returns (1 is TD(0))."""
    theta: float = 1e-10
    """value / policy iteration: stop when no state value changes by more than this."""
    slippery: bool = False
    """FrozenLake: the slippery (stochastic) version; deterministic by default."""


@dataclass
class DQNSection(Config):
    """DQN, and Double / Dueling DQN when double / dueling are set. The defaults are rl-zoo's tuned CartPole-v1
    DQN (lr 2.3e-3 in DEFAULTS): 128 gradient steps after every 256 environment steps."""

    buffer_size: int = 100_000
    """Replay buffer capacity (transitions)."""
    batch_size: int = 64
    """Transitions per gradient step."""
    learning_starts: int = 1_000
    """Environment steps of uniform random actions before learning starts."""
    train_every: int = 256
    """Environment steps between training phases."""
    gradient_steps: int = 128
    """Gradient steps in each training phase."""
    target_every: int = 10
    """Hard target update: copy the online network every N environment steps (used when tau = 1); with
    train_every = 256 that is a fresh copy before every training phase."""
    tau: float = 1.0
    """Soft target update θ' ← τθ + (1 − τ)θ' after each gradient step; 1: hard copies every target_every."""
    double: bool = False
    """Double DQN: the online network picks the next action, the target network values it."""
    dueling: bool = False
    """Dueling DQN: Q = V + A − mean(A)."""
    n_step: int = 1
    """n-step returns in the TD target."""
    eps_start: float = 1.0
    """ε-greedy at the start."""
    eps_end: float = 0.04
    """ε-greedy after the decay."""
    eps_fraction: float = 0.16
    """Fraction of total_steps over which ε decays linearly."""
    max_grad_norm: float = 10.0
    """Clip the gradient's global norm to this."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    hidden: int = 256
    """Width of the two hidden layers."""


@dataclass
class PGSection(Config):
    """REINFORCE and A2C."""

    baseline: bool = True
    """REINFORCE: subtract a learned state-value baseline from the returns."""
    episodes_per_update: int = 4
    """REINFORCE: whole episodes per gradient step."""
    n_steps: int = 8
    """A2C: environment steps per environment per update."""
    gae_lambda: float = 1.0
    """A2C: GAE λ (1 is the n-step return)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value-loss weight (A2C; REINFORCE's baseline has its own loss)."""
    shared: bool = False
    """A2C: one network trunk with a policy head and a value head; false: separate actor and critic."""
    rmsprop: bool = True
    """A2C: RMSprop (α 0.99, ε 1e-5) as Mnih et al. 2016 and SB3; false: Adam."""
    anneal_lr: bool = True
    """A2C: decay the learning rate linearly to 0 over the run."""
    max_grad_norm: float = 0.5
    """A2C: clip the gradient's global norm to this."""
    hidden: int = 64
    """Width of the two hidden layers."""


@dataclass
class PPOSection(Config):
    """PPO; the defaults are rl-zoo's CartPole-v1 hyperparameters."""

    n_steps: int = 32
    """Environment steps per environment per rollout."""
    epochs: int = 20
    """Passes over each rollout."""
    minibatches: int = 1
    """Minibatches per pass."""
    gae_lambda: float = 0.8
    """GAE λ."""
    clip: float = 0.2
    """Clipped-surrogate ε."""
    vf_clip: float = 0.0
    """Value clipping around the rollout's values; 0 disables."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value-loss weight."""
    norm_adv: bool = True
    """Whiten advantages per minibatch."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the run."""
    max_grad_norm: float = 0.5
    """Clip the gradient's global norm to this."""
    hidden: int = 64
    """Width of the two hidden layers."""


@dataclass
class DDPGSection(Config):
    """DDPG, and TD3 when td3 is set."""

    buffer_size: int = 100_000
    """Replay buffer capacity (transitions)."""
    batch_size: int = 128
    """Transitions per gradient step."""
    learning_starts: int = 1_000
    """Environment steps of uniform random actions before learning starts."""
    tau: float = 0.005
    """Soft target update rate."""
    noise: float = 0.1
    """Gaussian exploration noise std, as a fraction of the half range (the actor's tanh scale)."""
    td3: bool = False
    """TD3: twin critics with the minimum as target, delayed actor updates, target-policy smoothing."""
    policy_delay: int = 2
    """TD3: critic updates per actor update."""
    target_noise: float = 0.2
    """TD3: smoothing noise std on the target action (fraction of the half range)."""
    noise_clip: float = 0.5
    """TD3: clip of the smoothing noise (fraction of the half range)."""
    hidden: int = 128
    """Width of the two hidden layers."""


@dataclass
class BCSection(Config):
    expert: str = ""
    """Run directory of a trained classic policy to imitate; empty: the environment's scripted expert."""
    episodes: int = 10
    """Expert episodes recorded as the demonstration set."""
    batch_size: int = 64
    """State-action pairs per gradient step."""
    hidden: int = 64
    """Width of the two hidden layers."""


@dataclass
class ClassicChoice(Config):
    """Which algorithm on which environment: the first keys of a classic config (sections.py says why a base)."""

    algo: str = "ppo"
    """value_iteration, policy_iteration, mc, td, sarsa, q_learning, dqn, double_dqn, dueling_dqn, reinforce,
    a2c, ppo, ddpg, td3, bc (also `posttrain classic ALGO`)."""
    env: str = ""
    """Gymnasium environment id (also `--env ENV`); empty: the algorithm's default (FrozenLake-v1 for tabular,
    CartPole-v1, Pendulum-v1 for ddpg/td3). `GridWorld` is the built-in 4×4 gridworld."""


@dataclass
class ClassicConfig(RunConfig, ClassicChoice):
    """A classic RL algorithm on a gymnasium environment: tabular methods, DQN family, REINFORCE, A2C, PPO, DDPG,
    TD3, behaviour cloning."""

    output_dir: str = "runs/classic"
    seed: int = 0
    """Seeds the networks, exploration and the environments."""
    threads: int = 1
    """torch CPU threads (small networks run fastest on one)."""
    total_steps: int = 0
    """Environment steps to train for (episodes for tabular methods); 0: the algorithm's default."""
    lr: float = 0.0
    """Learning rate (Adam); 0: the algorithm's default."""
    gamma: float = 0.99
    """Discount factor."""
    num_envs: int = 0
    """Parallel environments (A2C, PPO; a synchronous vector env); 0: the algorithm's default."""
    eval_episodes: int = 20
    """Episodes of the greedy policy at each evaluation (different seeds from training)."""
    eval_every: int = 0
    """Evaluate every N environment steps (episodes for tabular); 0: only at the end."""
    tabular: TabularSection = field(default_factory=TabularSection)
    dqn: DQNSection = field(default_factory=DQNSection)
    pg: PGSection = field(default_factory=PGSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    ddpg: DDPGSection = field(default_factory=DDPGSection)
    bc: BCSection = field(default_factory=BCSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
