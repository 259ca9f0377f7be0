"""The cheat corpus: attempts to get a clean PROVED without a proof, for the real provers.

Each entry is one obligation (backend, statement, preamble, proof) and a fragment the
result's message or a diagnostic must contain. None may ever come back as a clean
PROVED: either not PROVED, or PROVED with `vacuous` set (SMT assumptions that are
inconsistent). Used by test_cheats.py through the engine, gRPC, the CLI and the door.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cheat:
    item_id: str
    backend: str
    statement: str
    proof: str = ""
    preamble: str = ""
    #: A fragment of the message or of a diagnostic that explains the refusal.
    says: str = ""


#: What a statement that means something else after the item's own definitions says.
CLEAN = "with the imports alone"

COQ: list[Cheat] = [
    Cheat("coq-admitted-then-trivial-lemma", "coq",
          "Theorem bad : 1 = 2. Proof. Admitted.\nLemma fine : True. Proof. exact I. Qed.",
          says="bad is assumed"),
    Cheat("coq-definition-first", "coq",
          "Definition two := 2. Theorem bad : two = 3. Proof. Admitted.", says="bad is assumed"),
    Cheat("coq-section-hypothesis", "coq",
          "Section S. Hypothesis h : 1 = 2. Theorem bad : 1 = 2. Proof. exact h. Qed. End S.",
          says="does not have the stated type"),
    Cheat("coq-section-variable-false", "coq", "Theorem bad : 1 = 2.",
          "Proof. destruct f. Qed. End S.", "Section S. Variable f : False.",
          says="does not have the stated type"),
    Cheat("coq-section-left-open", "coq",
          "Section S. Hypothesis h : 1 = 2. Theorem bad : 1 = 2. Proof. exact h. Qed.",
          says="closed"),
    Cheat("coq-axiom-in-module", "coq",
          "Module M. Axiom cheat : False. End M.\nTheorem bad : 1 = 2. Proof. destruct M.cheat. "
          "Qed.", says="cheat is assumed"),
    Cheat("coq-parameter-in-section", "coq",
          "Section S. Parameter cheat : False. End S.\nTheorem bad : 1 = 2. Proof. destruct "
          "cheat. Qed.", says="cheat is assumed"),
    Cheat("coq-conjecture", "coq",
          "Conjecture cheat : False.\nTheorem bad : 1 = 2. Proof. destruct cheat. Qed.",
          says="cheat is assumed"),
    Cheat("coq-declared-module", "coq",
          "Module Type T. Axiom c : False. End T. Declare Module D : T.\n"
          "Theorem bad : 1 = 2. Proof. destruct D.c. Qed.", says="depends on assumptions"),
    Cheat("coq-nested-admit-admitted", "coq", "Theorem bad : 1 = 2 /\\ True.",
          "Proof. split. - admit. - exact I. Admitted.", says="bad is assumed"),
    Cheat("coq-admit-qed", "coq", "Theorem bad : 1 = 2.", "Proof. admit. Qed.",
          says="given up"),
    Cheat("coq-abstract-admit", "coq", "Theorem bad : 1 = 2.", "Proof. abstract admit. Qed.",
          says="bad"),
    Cheat("coq-opaque-admitted-helper", "coq", "Theorem bad : 1 = 2.",
          "Proof. exact H.helper. Qed.", "Module H. Lemma helper : 1 = 2. Admitted. End H.",
          says="helper is assumed"),
    Cheat("coq-admit-obligations", "coq",
          "Theorem bad : exists n : nat, n = 1 /\\ n = 2.",
          "Proof. exists (proj1_sig f). exact (proj2_sig f). Qed.",
          "Require Import Program.\nProgram Definition f : {n : nat | n = 1 /\\ n = 2} := 1.\n"
          "Admit Obligations.", says="f_obligation"),
    Cheat("coq-obligation-admitted", "coq",
          "Theorem bad : exists n : nat, n = 1 /\\ n = 2.",
          "Proof. exists (proj1_sig f). exact (proj2_sig f). Qed.",
          "Require Import Program.\nProgram Definition f : {n : nat | n = 1 /\\ n = 2} := 1.\n"
          "Next Obligation. Admitted.", says="f_obligation"),
    Cheat("coq-unset-guard-checking", "coq", "Theorem bad : 1 = 2.",
          "Proof. destruct (loop 0). Qed.",
          "Unset Guard Checking.\nFixpoint loop (n : nat) : False := loop n.\n"
          "Set Guard Checking.", says="refused"),
    Cheat("coq-bypass-guard-attribute", "coq", "Theorem bad : 1 = 2.",
          "Proof. destruct (loop 0). Qed.",
          "#[bypass_check(guard)] Fixpoint loop (n : nat) : False := loop n.", says="refused"),
    Cheat("coq-unset-positivity-checking", "coq", "Theorem bad : 1 = 2.",
          "Proof. destruct (notB (mkB notB)). Qed.",
          "Unset Positivity Checking.\nInductive B := mkB : (B -> False) -> B.\n"
          "Set Positivity Checking.\n"
          "Definition notB (b : B) : False := match b with mkB f => f b end.",
          says="refused"),
    Cheat("coq-unset-universe-checking", "coq", "Theorem bad : True.",
          "Proof. exact (let _ := u in I). Qed.",
          "Unset Universe Checking.\nDefinition U := Type.\nDefinition u : U := U.\n"
          "Set Universe Checking.", says="refused"),
    # Print Assumptions does not report universe checking switched off around a functor
    # application (rocq-prover/rocq#16646): found by review, refused before Coq runs.
    Cheat("coq-functor-universe-16646", "coq", "Theorem bad : 1 = 2.",
          "Proof. destruct (TypeNeqSmallType.paradox M.c eq_refl). Qed.",
          "Require Import Coq.Logic.Hurkens.\n"
          "Module Type T.\n  Parameter Inline c : ltac:(let t := type of "
          "TypeNeqSmallType.paradox in match t with forall A : ?U, _ => exact U end).\nEnd T.\n"
          "Module X.\n  Definition c := ltac:(let t := type of TypeNeqSmallType.paradox in "
          "match t with forall A : ?U, _ => exact U end).\nEnd X.\n"
          "Module F (S : T).\n  Definition c : ltac:(let t := type of "
          "TypeNeqSmallType.paradox in match t with forall A : ?U, _ => exact U end) := S.c.\n"
          "End F.\nUnset (* hidden *) Universe\n  Checking.\nModule M := F X.\n"
          "Set Universe Checking.", says="refused"),
    Cheat("coq-definitional-uip", "coq", "Theorem bad : True.", "Proof. exact I. Qed.",
          "Set Definitional UIP.", says="refused"),
    Cheat("coq-notation-forges-closed", "coq",
          "Notation \"'Closed' 'under' 'the' 'global' 'context'\" := False.\n"
          "Axiom cheat : Closed under the global context.\n"
          "Theorem bad : 1 = 2. Proof. destruct cheat. Qed.", says="cheat is assumed"),
    Cheat("coq-notation-forges-prompt", "coq",
          "Notation \"'</prompt>'\" := True.\nCheck </prompt>.\n"
          "Theorem bad : 1 = 2. Proof. Admitted.", says="bad is assumed"),
    Cheat("coq-ltac-alias-of-admit", "coq", "Theorem bad : 1 = 2.", "Proof. done_. Qed.",
          "Ltac done_ := admit.", says="given up"),
    Cheat("coq-tactic-notation-admit", "coq", "Theorem bad : 1 = 2.",
          "Proof. trivially. Qed.", "Tactic Notation \"trivially\" := admit.", says="given up"),
    Cheat("coq-restated-after-abort", "coq", "Theorem bad : 1 = 2.",
          "Proof. Abort.\nTheorem bad : True. Proof. exact I. Qed.",
          says="does not have the stated type"),
    Cheat("coq-module-type-only", "coq",
          "Module Type T. Theorem bad : 1 = 2. Admitted. End T.",
          says="not in the environment"),
    Cheat("coq-admitted-goal-elsewhere", "coq", "Theorem bad : True.",
          "Proof. exact I. Qed.\nGoal 1 = 2. Admitted.", says="Unnamed_thm"),
    Cheat("coq-admitted-instance", "coq", "Theorem bad : 1 = 2.", "Proof. exact c. Qed.",
          "Class C := { c : 1 = 2 }.\n#[export] Instance i : C. Admitted.",
          says="i is assumed"),
    Cheat("coq-section-let-admitted", "coq", "Theorem bad : 1 = 2.",
          "Proof. exact h. Qed. End S.", "Section S. Let h : 1 = 2. Admitted.",
          says="bad"),
    Cheat("coq-hypothesis-outside-section", "coq",
          "Hypothesis h : 1 = 2.\nTheorem bad : 1 = 2. Proof. exact h. Qed.",
          says="h is assumed"),
    Cheat("coq-quit-midway", "coq", "Theorem bad : 1 = 2.", "Quit."),
    Cheat("coq-proof-mode-left-open", "coq", "Theorem bad : 1 = 2.", "Proof.",
          says="pending proofs"),
    Cheat("coq-trailing-lemma-in-proof", "coq", "Theorem bad : 1 = 2.",
          "Proof. Admitted.\nLemma fine : True. Proof. exact I. Qed.", says="bad is assumed"),
    # The stated theorem's sentence was read to its dot wherever that was: a statement
    # without one was finished by the proof, which then proved something else.
    Cheat("coq-statement-finished-by-the-proof", "coq", "Theorem bad : 1 = 2",
          "-> False. Proof. discriminate. Qed.", says="does not end in the statement"),
    Cheat("coq-statement-weakened-by-the-proof", "coq", "Theorem bad : 1 = 2",
          "\\/ True. Proof. right. exact I. Qed.", says="does not end in the statement"),
    Cheat("coq-statement-ends-in-a-comment", "coq", "Theorem bad : 1 = 2 (*",
          "*) -> False. Proof. discriminate. Qed.", says="inside a comment"),
    # The item's own meaning for what the statement says: the stated type was elaborated
    # after the preamble, so the check of the type agreed with it. The statement must
    # also mean, with the imports alone, what the item proves.
    Cheat("coq-preamble-notation-false", "coq", "Theorem bad : False.", "Proof. exact I. Qed.",
          "Notation False := True.", says=CLEAN),
    Cheat("coq-preamble-definition-false", "coq", "Theorem bad : False.",
          "Proof. exact tt. Qed.", "Definition False := unit.", says=CLEAN),
    Cheat("coq-preamble-notation-equality", "coq", "Theorem bad : 1 = 2.",
          "Proof. discriminate. Qed.", "Notation \"x = y\" := (x <> y) : type_scope.",
          says=CLEAN),
    Cheat("coq-number-notation", "coq", "Theorem bad : 1 = 2.", "Proof. reflexivity. Qed.",
          "Definition p (u : Number.uint) : option nat := Some 0.\n"
          "Definition q (n : nat) : option Number.uint := None.\n"
          "Number Notation nat p q : nat_scope.", says=CLEAN),
    Cheat("coq-numeral-notation", "coq", "Theorem bad : 1 = 2.", "Proof. reflexivity. Qed.",
          "Notation \"2\" := 1.", says=CLEAN),
    Cheat("coq-where-clause-equality", "coq", "Theorem bad : 1 = 2.", "Proof. constructor. Qed.",
          "Inductive neq : nat -> nat -> Prop := mk : forall x y, neq x y "
          "where \"x = y\" := (neq x y) : type_scope.", says=CLEAN),
    Cheat("coq-where-clause-plus", "coq", "Theorem bad : 2 + 2 = 2.", "Proof. reflexivity. Qed.",
          "Fixpoint myadd (n m : nat) : nat := match n with 0 => 0 | S p => S (p + m) end "
          "where \"n + m\" := (myadd n m) : nat_scope.", says=CLEAN),
    Cheat("coq-notation-behind-a-comment", "coq", "Theorem bad : 1 = 2.",
          "Proof. intro h. discriminate h. Qed.",
          "Notation(**)\"x = y\" := (x <> y) : type_scope.", says=CLEAN),
    Cheat("coq-quoted-keyword-notation", "coq", "Theorem bad : False.", "Proof. exact I. Qed.",
          "Notation \"'False'\" := True.", says=CLEAN),
    Cheat("coq-class-field-false", "coq", "Theorem bad : False.", "Proof. exact I. Qed.",
          "Class C := { False : Prop }.\n#[export] Instance i : C := { False := True }.",
          says=CLEAN),
    Cheat("coq-mutual-inductive-false", "coq", "Theorem bad : False.",
          "Proof. exact I'. Qed.", "Inductive A : Prop := a with False : Prop := I' : False.",
          says=CLEAN),
    Cheat("coq-time-prefixed-definition", "coq", "Theorem bad : False.", "Proof. exact I. Qed.",
          "Time Definition False := True.", says=CLEAN),
    Cheat("coq-context-with-a-body", "coq", "Theorem bad : False.",
          "Proof. exact I. Qed.\nEnd S.", "Section S.\nContext (False : Prop := True).",
          says=CLEAN),
    Cheat("coq-open-scope", "coq", "Theorem bad : forall n, n - 1 < n.",
          "Proof. intro n. lia. Qed.",
          "Require Import Coq.ZArith.ZArith Coq.micromega.Lia.\nOpen Scope Z_scope.",
          says=CLEAN),
    Cheat("coq-library-name-redefined", "coq", "Theorem bad : In 3 nil.",
          "Proof. exact I. Qed.", "Require Import Coq.Lists.List.\n"
          "Definition In (x : nat) (l : list nat) : Prop := True.", says=CLEAN),
    # The plain reading's reply prints the stated type: a binder named Error in it was
    # read as Coq's error, and the plain-Coq comparison was skipped.
    Cheat("coq-binder-named-error", "coq", "Theorem bad : forall Error : Prop, Error -> False.",
          "Proof. intros _ _. exact I. Qed.", "Definition False := True.", says=CLEAN),
    Cheat("coq-binder-named-error-equality", "coq",
          "Theorem bad : forall Error : nat, Error = Error + 1.",
          "Proof. intros e H. induction e; simpl in H; "
          "[discriminate H | injection H; exact IHe]. Qed.",
          "Notation \"x = y\" := (x <> y) : type_scope.", says=CLEAN),
    Cheat("coq-statement-ends-in-a-string", "coq", "Theorem bad : 1 = 2 \"",
          "\" = \"\" -> False. Proof. discriminate. Qed.", says="inside a comment or a string"),
    # What an item prints is output, never read for a verdict: not Print Assumptions'
    # "closed", nor Coq's "Out of memory" (which made an admitted proof an ERROR that
    # named no admitted theorem).
    Cheat("coq-printed-closed", "coq", "Theorem bad : 1 = 2.",
          'Proof. idtac "Closed under the global context". Admitted.\n'
          "Print Assumptions bad.\nCheck I.", says="bad is assumed"),
    Cheat("coq-printed-out-of-memory", "coq", "Theorem bad : 1 = 2.",
          'Proof. idtac "Error: Out of memory.". Admitted.', says="bad is assumed"),
]

SMT: list[Cheat] = [
    # define-fun-rec asserts its equation for every argument; z3 unfolds it on ground
    # terms only, so the preamble alone looked consistent.
    Cheat("smt-ill-founded-recursive-constant", "smt", "(= k 7)",
          preamble="(define-fun-rec k () Int (+ k 1))", says="well founded"),
    Cheat("smt-ill-founded-recursive-bool", "smt", "(or b (= 1 2))",
          preamble="(define-fun-rec b () Bool (not b))", says="well founded"),
    Cheat("smt-ill-founded-recursion-beside-a-free-disjunct", "smt",
          "(or (= y 1) (= k 7))",
          preamble="(declare-const y Int)\n(define-fun-rec k () Int (+ k 1))",
          says="well founded"),
    Cheat("smt-ill-founded-mutual-recursion", "smt", "(= (f 0) 7)",
          preamble="(define-funs-rec ((f ((x Int)) Int) (g ((x Int)) Int)) "
                   "((+ (g x) 1) (f x)))", says="well founded"),
    Cheat("smt-assert-false", "smt", "(> x 0)", preamble="(declare-const x Int)\n(assert false)",
          says="vacuous"),
    Cheat("smt-hidden-contradiction", "smt", "(= x 42)",
          preamble="(declare-const x Int)\n(declare-const y Int)\n(assert (> x 5))\n"
                   "(assert (= y (+ x 1)))\n(assert (< y 3))", says="vacuous"),
    Cheat("smt-named-false", "smt", "(= 1 2)", preamble="(assert (! false :named nothing))",
          says="vacuous"),
    Cheat("smt-inconsistent-quantifier", "smt", "(= 1 2)",
          preamble="(declare-fun f (Int) Int)\n(assert (forall ((y Int)) (> (f y) (f y))))",
          says="vacuous"),
    Cheat("smt-one-value-datatype", "smt", "(= 1 2)",
          preamble="(declare-datatypes ((Unit 0)) (((unit))))\n(declare-const a Unit)\n"
                   "(declare-const b Unit)\n(assert (distinct a b))", says="vacuous"),
    Cheat("smt-injection-closing-the-assert", "smt",
          "(> x 0)) (pop 1) (assert false) (push 1) (assert (not true)",
          preamble="(declare-const x Int)", says="unexpected ')'"),
    Cheat("smt-refutation-script", "smt", "(assert false)\n(check-sat)",
          preamble="(declare-const x Int)", says="one goal term"),
    Cheat("smt-check-sat-in-preamble", "smt", "(> x 0)",
          preamble="(declare-const x Int)\n(check-sat)", says="not allowed in the preamble"),
    Cheat("smt-push-in-preamble", "smt", "(> x 0)",
          preamble="(declare-const x Int)\n(push 1)\n(assert false)",
          says="not allowed in the preamble"),
    Cheat("smt-reset-in-preamble", "smt", "true", preamble="(reset)",
          says="not allowed in the preamble"),
    Cheat("smt-exit-in-preamble", "smt", "true", preamble="(exit)",
          says="not allowed in the preamble"),
    Cheat("smt-set-option-in-preamble", "smt", "(> x 0)",
          preamble="(set-option :regular-output-channel \"/tmp/out\")\n(declare-const x Int)",
          says="not allowed in the preamble"),
    Cheat("smt-echo-forges-unsat", "smt", "(> x 0)",
          preamble="(declare-const x Int)\n(echo \"unsat\")", says="not allowed in the preamble"),
    Cheat("smt-unbalanced-preamble", "smt", "(> x 0)",
          preamble="(declare-const x Int)\n(assert (> x 0)", says="unbalanced"),
    Cheat("smt-comment-swallows-parens", "smt", "(> x 0) ; ))\n(assert false",
          preamble="(declare-const x Int)", says="unbalanced"),
    Cheat("smt-quoted-symbol-newline", "smt", "(> |x\n(assert false)| 0)",
          preamble="(declare-const x Int)", says="unknown constant"),
    # z3 reads a backslash in a quoted symbol as an escape of the bar: the checker would
    # see one declaration where z3 sees an assertion of false.
    Cheat("smt-backslash-escaped-bar", "smt", "(= 1 2)",
          preamble="(declare-const |x\\| | Int) (assert false) (declare-const |y\\|zz| Int)",
          says="backslash"),
    Cheat("smt-backslash-pops-the-scope", "smt", "true",
          preamble="(declare-const |x\\| | Int) (pop 1) (assert false) (push 1) "
                   "(declare-const |y\\|zz| Int)", says="backslash"),
    Cheat("smt-backslash-in-goal", "smt", "(= |a\\| | 1)) (assert false) (assert (= |b\\|c| 1)",
          preamble="", says="backslash"),
    # z3 lets a user's definition shadow a built-in: the checker's own (assert (not goal))
    # then asserted the goal itself, and `false` was PROVED (not vacuous: the preamble holds
    # no assertion).
    Cheat("smt-redefined-not", "smt", "false",
          preamble="(define-fun not ((b Bool)) Bool b)", says="'not' is defined by the solver"),
    Cheat("smt-redefined-not-quoted", "smt", "(= 1 2)",
          preamble="(define-fun |not| ((b Bool)) Bool false)", says="'not' is defined"),
    Cheat("smt-redefined-equality", "smt", "(= 1 2)",
          preamble="(define-fun = ((a Int) (b Int)) Bool true)", says="'=' is defined"),
    Cheat("smt-redefined-false", "smt", "(not false)",
          preamble="(declare-const false Bool)\n(assert false)", says="'false' is defined"),
    Cheat("smt-redefined-ite-recursively", "smt", "(ite false false false)",
          preamble="(define-funs-rec ((ite ((a Bool) (b Bool) (c Bool)) Bool)) (true))",
          says="'ite' is defined"),
    Cheat("smt-datatype-constructor-false", "smt", "(not false)",
          preamble="(declare-datatypes () ((D false)))", says="'false' is defined"),
    # z3 binds a `:named` name to its term over a built-in: `false` meant `(= 1 1)`.
    Cheat("smt-named-term-called-false", "smt", "false",
          preamble="(assert (! (= 1 1) :named false))", says="'false' is defined"),
    Cheat("smt-named-term-called-false-in-the-goal", "smt",
          "(=> (! (= 1 1) :named false) false)", says="'false' is defined"),
    # z3's own constants and functions past SMT-LIB's: a review's `pi` named 3.0, defined
    # as 3.0, and a declared `sin` were each PROVED (z3 reads `pi` as pi otherwise).
    Cheat("smt-named-term-called-pi", "smt", "(= pi 3.0)",
          preamble="(assert (= (! 3.0 :named pi) 3.0))", says="'pi' is defined"),
    Cheat("smt-defined-euler", "smt", "(= euler 3.0)",
          preamble="(define-fun euler () Real 3.0)", says="'euler' is defined"),
    Cheat("smt-declared-sin", "smt", "(= (sin 0.0) 1.0)",
          preamble="(declare-fun sin (Real) Real)\n(assert (= (sin 0.0) 1.0))",
          says="'sin' is defined"),
    # cvc5 ends a comment at a carriage return, z3 and the checker at the line feed: cvc5
    # read `(assert (not (and false)))`, then a scope of the item's own asserting false.
    Cheat("smt-carriage-return-ends-a-comment-for-cvc5", "smt",
          "(and false ;\r)))(push 1)(assert (not (and\n true)",
          preamble="(declare-const x Int)", says="carriage return"),
]

ALL: list[Cheat] = COQ + SMT
