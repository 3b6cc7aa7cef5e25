// ESLint: typescript-eslint's recommended rules, plus the boundaries that keep the layout honest.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'image-build/out/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      globals: {
        process: 'readonly',
        Buffer: 'readonly',
        console: 'readonly',
        setTimeout: 'readonly',
        clearTimeout: 'readonly',
        setInterval: 'readonly',
        clearInterval: 'readonly',
        setImmediate: 'readonly',
        URL: 'readonly',
        BigUint64Array: 'readonly',
        NodeJS: 'readonly',
      },
    },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  {
    // shared/ is imported by both sides and imports from neither.
    files: ['shared/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/appliance/**', '**/wrapper/**'] }] },
  },
  {
    files: ['appliance/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/wrapper/**'] }] },
  },
  {
    files: ['wrapper/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: ['**/appliance/**'] }] },
  },
  {
    // Library code logs through the one logger; only CLIs and tests write to the console directly.
    files: ['appliance/src/**/*.ts', 'wrapper/src/**/*.ts', 'shared/src/**/*.ts'],
    ignores: ['**/*.test.ts'],
    rules: { 'no-console': 'error' },
  },
);
