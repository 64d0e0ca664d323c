-- The user_plans table of calmesh_common.plans, in the shape every enforcing service shares.
\include user_plans
